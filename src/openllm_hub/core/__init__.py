"""Interfaces and shared mechanics of openllm_hub; engines are imported lazily by plugins."""
