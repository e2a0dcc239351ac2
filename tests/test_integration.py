"""adaptune with the rest of the ecosystem: HF Trainer and torch.compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adaptune
from adaptune import AdapterConfig

from .helpers import tiny_bert_classifier


class ToyData(torch.utils.data.Dataset):
    """Label = whether token 7 occurs: learnable by a classifier on top of a frozen random BERT."""

    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(8, 100, (n, 8), generator=g)
        self.labels = torch.arange(n) % 2
        self.ids[self.labels == 1, 3] = 7

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def test_hf_trainer_trains_only_the_adapter(tmp_path: Path) -> None:
    from transformers import Trainer, TrainingArguments

    model = tiny_bert_classifier()
    adaptune.add_adapter(model, "toy", AdapterConfig.houlsby(reduction_factor=4))
    adaptune.train_adapter(model, "toy")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=100,
    )
    result = Trainer(model=model, args=args, train_dataset=ToyData()).train()
    assert result.global_step == 4
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed
    assert all(".adapters.toy." in n or n.startswith("classifier.") for n in changed)
    assert any(".adapters.toy.up.weight" in n for n in changed)
    folder = adaptune.save_adapter(model, "toy", tmp_path / "toy")
    fresh = tiny_bert_classifier()
    adaptune.load_adapter(fresh, folder)
    batch = ToyData()[0]["input_ids"][None]
    model.eval()
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=batch).logits, model(input_ids=batch).logits)


@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    model = tiny_bert_classifier(layers=2)
    adaptune.add_adapter(model, "p", AdapterConfig.parallel(init="normal"))
    adaptune.add_adapter(model, "h", AdapterConfig.houlsby(init="normal"))
    adaptune.set_active(model, ["p", "h"])
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(input_ids=ids).logits
        compiled = torch.compile(model)(input_ids=ids).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
