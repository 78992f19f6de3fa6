"""The training engine: everything that imports torch lives in this subpackage.

Nothing outside ``trainer.train`` imports torch, transformers or safetensors at module
level, so trainctl and the spool stay fast and light.
"""
