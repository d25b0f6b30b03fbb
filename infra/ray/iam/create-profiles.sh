#!/usr/bin/env bash
# Create the two IAM instance profiles infra/ray/cluster.yaml names, once per AWS account:
#   webclip-ray-head    the head: launches workers (EC2), passes them their role, reads s3://commoncrawl,
#                       reads and writes the run bucket                      (head-policy.json)
#   webclip-ray-worker  download workers: read s3://commoncrawl, read and write the run bucket
#                                                                           (worker-policy.json)
# Usage: bash infra/ray/iam/create-profiles.sh BUCKET     (the bucket of your --run s3://BUCKET/…)
# Needs the aws CLI with IAM rights. Rerunning updates the policies.
set -euo pipefail
bucket=${1:?usage: $0 BUCKET (the run bucket, without s3://)}
here=$(cd "$(dirname "$0")" && pwd)
trust='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}'
for who in head worker; do
  name=webclip-ray-$who
  aws iam get-role --role-name "$name" >/dev/null 2>&1 || aws iam create-role --role-name "$name" \
      --assume-role-policy-document "$trust" >/dev/null
  aws iam put-role-policy --role-name "$name" --policy-name "$name" \
      --policy-document "$(sed "s/RUN_BUCKET/$bucket/g" "$here/$who-policy.json")"
  if ! aws iam get-instance-profile --instance-profile-name "$name" >/dev/null 2>&1; then
    aws iam create-instance-profile --instance-profile-name "$name" >/dev/null
    aws iam add-role-to-instance-profile --instance-profile-name "$name" --role-name "$name"
  fi
  echo "instance profile $name: ok (bucket $bucket)"
done
