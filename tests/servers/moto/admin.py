"""IAM administration of a moto server for tests/sigv4.rs (run with the moto venv's python).

  admin.py setup ENDPOINT            -> creates user `sidekey` with an allow-all policy and an
                                        access key (moto's first unauthenticated actions)
  admin.py create-key ENDPOINT       -> a second access key for `sidekey`
  admin.py delete-key ENDPOINT KEYID -> deletes one
Credentials for the signed calls come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. New keys
are printed as credential_process JSON on stdout.
"""
import json
import sys

import boto3

POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def iam(endpoint):
    return boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")


def show(key):
    print(json.dumps({"Version": 1, "AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}))


def main():
    command, endpoint = sys.argv[1], sys.argv[2]
    client = iam(endpoint)
    if command == "setup":
        client.create_user(UserName="sidekey")
        client.put_user_policy(UserName="sidekey", PolicyName="all", PolicyDocument=json.dumps(POLICY))
        show(client.create_access_key(UserName="sidekey")["AccessKey"])
    elif command == "create-key":
        show(client.create_access_key(UserName="sidekey")["AccessKey"])
    elif command == "delete-key":
        client.delete_access_key(UserName="sidekey", AccessKeyId=sys.argv[3])
        print("{}")
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
