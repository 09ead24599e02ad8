"""What the Lambda handlers in `functions/` import (shipped in the layer): settings from the environment,
the one Logger and Metrics, the typed event models, and the cached wiring of the AWS adapters."""
