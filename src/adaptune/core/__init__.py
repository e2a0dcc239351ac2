"""The core: where adapters go (placement), how they hook in (slot), how they combine (composition) and the
model-level API (add / activate / train / delete / plan). Knows no adapter method by name: methods register
themselves (``adaptune.methods``). Imports nothing from the layers above it."""
