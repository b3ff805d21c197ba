"""Export of pruned models (Hugging Face checkpoint, ONNX). See the export issue."""
