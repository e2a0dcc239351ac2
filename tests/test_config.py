"""AdapterConfig: validation, presets, JSON round-trip, layer specs."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptune import AdapterConfig, parse_layers


def test_presets() -> None:
    assert AdapterConfig.pfeiffer().placement == "ffn"
    assert AdapterConfig.pfeiffer().activation == "relu"
    h = AdapterConfig.houlsby(reduction_factor=8)
    assert (h.placement, h.activation, h.reduction_factor) == ("both", "swish", 8)
    p = AdapterConfig.parallel()
    assert (p.placement, p.scaling) == ("parallel", 4.0)


def test_round_trip_through_json() -> None:
    cfg = AdapterConfig.houlsby(bottleneck_size=7, layers=range(2, 5), target_modules=[".dense"], dropout=0.1)
    back = AdapterConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert back.layers == (2, 3, 4)


def test_to_dict_names_the_method_and_from_dict_checks_it() -> None:
    data = AdapterConfig(bottleneck_size=3).to_dict()
    assert next(iter(data.items())) == ("method", "bottleneck")
    assert AdapterConfig.from_dict(data) == AdapterConfig(bottleneck_size=3)
    assert AdapterConfig.from_dict({"bottleneck_size": 3}) == AdapterConfig(bottleneck_size=3)  # older files
    with pytest.raises(ValueError, match=r"x\.json: method='lora', but AdapterConfig is for 'bottleneck'"):
        AdapterConfig.from_dict({**data, "method": "lora"}, source="x.json")


def test_where_fields_live_on_the_method_config_base() -> None:
    from adaptune import MethodConfig

    shared = {f.name for f in dataclasses.fields(MethodConfig)}
    assert shared == {"placement", "layers", "target_modules"}
    assert shared < {f.name for f in dataclasses.fields(AdapterConfig)}
    assert issubclass(AdapterConfig, MethodConfig)
    with pytest.raises(ValueError, match=r"MethodConfig\.placement='middle'"):
        MethodConfig(placement="middle")


def test_unknown_keys_warn_and_load() -> None:
    data = AdapterConfig().to_dict() | {"future_knob": 3}
    with pytest.warns(UserWarning, match="future_knob"):
        cfg = AdapterConfig.from_dict(data)
    assert cfg == AdapterConfig()


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("placement", "middle", "placement"),
        ("activation", "softplus", "activation"),
        ("init", "xavier", "init"),
        ("reduction_factor", 0, "reduction_factor"),
        ("bottleneck_size", 0, "bottleneck_size"),
        ("dropout", 1.5, "dropout"),
        ("layers", "every-other", "layers"),
        ("target_modules", [], "target_modules"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        AdapterConfig(**{field: value})


def test_from_dict_error_names_source() -> None:
    with pytest.raises(ValueError, match=r"x\.json: .*placement"):
        AdapterConfig.from_dict({"placement": "nowhere"}, source="x.json")


def test_bottleneck_size() -> None:
    assert AdapterConfig(reduction_factor=16).hidden_size_for(384) == 24
    assert AdapterConfig(bottleneck_size=5).hidden_size_for(384) == 5


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, [0, 1, 2, 3, 4, 5]),
        ("all", [0, 1, 2, 3, 4, 5]),
        ((0, -1), [0, 5]),
        ("last:2", [4, 5]),
        ("top-half", [3, 4, 5]),
        ("bottom-half", [0, 1, 2]),
        ("1-3", [1, 2, 3]),
        ("0,2,4", [0, 2, 4]),
        ("0, 4-5", [0, 4, 5]),
    ],
)
def test_parse_layers(spec: object, expected: list[int]) -> None:
    assert parse_layers(spec, 6) == expected


def test_parse_layers_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_layers((7,), 6)


# ---- property-based: config parsing never fails with anything but a clear ValueError

_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 50), st.floats(allow_nan=True), st.text(max_size=8),
                    st.lists(st.integers(-3, 8), max_size=4))  # fmt: skip
_KEYS = st.sampled_from([*AdapterConfig().to_dict(), "unknown_key"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_from_dict_accepts_or_raises_value_error(data: dict) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cfg = AdapterConfig.from_dict(data, source="fuzz.json")
        except ValueError as err:
            assert str(err).startswith("fuzz.json: ")
            return
    assert AdapterConfig.from_dict(cfg.to_dict()) == cfg


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=12), st.lists(st.integers(-10, 10), max_size=5)), st.integers(1, 12))
def test_parse_layers_in_range_or_value_error(spec: object, n: int) -> None:
    try:
        layers = parse_layers(spec, n)
    except (ValueError, TypeError) as err:
        assert isinstance(err, ValueError) or spec is not None
        return
    assert layers == sorted(set(layers)) and all(0 <= i < n for i in layers)
