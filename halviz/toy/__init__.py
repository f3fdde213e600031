"""The toy world: procedurally drawn scenes with exact object lists, and a tiny LLaVA trained on them."""
