"""A local Encord API server that the unmodified `encord` SDK talks to (tests, demo, benchmarks only).

Never part of the Lambda deployment package.
"""
