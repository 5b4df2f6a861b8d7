"""APX dataplane: the runtime services the operator deploys (rate-limit service, async gateway, worker).

Installed as ``apx.dataplane``. Each service is a subpackage with a console
script; ``apx.dataplane.common`` holds what they share (JSON logging,
shutdown on SIGTERM, the reader of the operator's Redis rule sets).
"""
