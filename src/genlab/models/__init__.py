"""Networks only (nn.Modules), one architecture per file; shared blocks in blocks.py."""
