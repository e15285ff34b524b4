"""Built-in protocol plugins; each sub-package registers through the entry-point group."""
