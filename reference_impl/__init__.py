"""Reference implementations that the knowledge base cites and runs."""
