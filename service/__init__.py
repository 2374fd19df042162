"""tagflow: online content classification with a human in the loop."""
