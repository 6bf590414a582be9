"""Reading files from any fsspec URL with a local cache, and the bounded retry of storage blips."""
