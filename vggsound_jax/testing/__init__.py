"""Reference implementations and fixture writers for tests and benchmarks; not used at runtime."""
