"""AWS adapters for the domain's ports: S3 (lake), DynamoDB (state), SQS (work queue), EventBridge (events).

They take boto3 clients as `Any` (no stubs in the dependency set) so tests hand them clients pointed
at moto's server; the factories that build real clients live in `encord_mirror.aws_lambda.wiring`.
"""

from encord_mirror.adapters.aws.dynamodb import DynamoStateStore
from encord_mirror.adapters.aws.eventbridge import EventBridgeSink
from encord_mirror.adapters.aws.s3 import S3ObjectStore
from encord_mirror.adapters.aws.sqs import SqsWorkQueue

__all__ = ["DynamoStateStore", "EventBridgeSink", "S3ObjectStore", "SqsWorkQueue"]
