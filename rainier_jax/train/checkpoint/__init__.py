"""Checkpoints: orbax saves sealed by a manifest, the run record, and the train command's session."""
