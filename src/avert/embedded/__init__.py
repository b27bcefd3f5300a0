"""The embedded default model (`model/`), trained by `avert train` on the procedural world (`avert.world`)."""
