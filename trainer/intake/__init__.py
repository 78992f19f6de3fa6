"""Files become items: record formats, validation, ``trainctl enqueue`` and the inbox. Torch-free."""
