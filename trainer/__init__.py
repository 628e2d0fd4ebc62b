"""Everything that makes or changes a model. Needs the `train` extra (torch), except publish."""
