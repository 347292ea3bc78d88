"""Data: MedMNIST files (download + verify), custom npz, the embedded digits set, and the
batched tensor pipeline that feeds training. See pipeline.build_data."""
