"""`avert train`: the embedded default model, trained on the procedural world (see `avert.world`)."""
