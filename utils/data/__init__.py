"""Data: reading FineHarm-format folders, processed-data folders (train/val/test JSONL of token ids and labels), and
the project's own FineHarm-format sample. The paper's entry point, ``python -m utils.data_process``, uses them."""
