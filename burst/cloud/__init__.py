"""Cloud providers: EC2 through boto3, and the embedded sandbox that emulates it locally."""
