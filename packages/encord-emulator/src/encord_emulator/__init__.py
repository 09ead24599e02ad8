"""A local Encord API server that the unmodified `encord` SDK talks to: a "moto for Encord".

For tests, demos and benchmarks; never part of a deployment package. `encord_emulator.testing` starts one
in-process (`emulator_env`), `encord_emulator.generate` writes synthetic projects.
"""
