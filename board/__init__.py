"""edge-llm's device runtime: reads a bundle and runs it with onnxruntime or pyACL (`python -m board`).

Needs only numpy, tokenizers and a backend; never torch, transformers, onnx or host.
"""
