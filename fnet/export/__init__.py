"""torch -> ONNX (FP32/FP16) -> TensorRT, every artefact checked for redshift parity before it is written."""
