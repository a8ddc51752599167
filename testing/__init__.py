"""Real components for tests, benchmarks and demos: a faithful fake vLLM server and documents with known text."""
