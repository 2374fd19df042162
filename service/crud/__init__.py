"""Data functions: session first, keyword-only arguments, typed returns. Routes go through them."""
