#!/usr/bin/env bash
# Creates the injection webhook's serving certificate for the plain-YAML install: a private CA
# and a certificate for the webhook Service, stored as Secret llm-sidecar-webhook-tls, and the CA
# set as the MutatingWebhookConfiguration's caBundle. Re-run to rotate (the webhook re-reads
# the files without a restart). Needs openssl and kubectl.
set -euo pipefail
NS=${NS:-llm-sidecar}
SVC=${SVC:-llm-sidecar-webhook}
MWC=${MWC:-llm-sidecar}
DAYS=${DAYS:-825}
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=llm-sidecar-webhook-ca" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$SVC.$NS.svc" -keyout tls.key -out tls.csr 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:%s.%s,DNS:%s.%s.svc\nextendedKeyUsage=serverAuth\n' \
  "$SVC" "$SVC" "$NS" "$SVC" "$NS" > ext.cnf
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" \
  -extfile ext.cnf -out tls.crt 2>/dev/null
kubectl -n "$NS" create secret tls "$SVC-tls" --cert=tls.crt --key=tls.key --dry-run=client -o yaml \
  | kubectl apply -f -
kubectl -n "$NS" patch secret "$SVC-tls" --type merge -p "{\"data\":{\"ca.crt\":\"$(base64 -w0 < ca.crt)\"}}"
ca=$(base64 -w0 < ca.crt)
kubectl patch mutatingwebhookconfiguration "$MWC" --type json -p "[
  {\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$ca\"},
  {\"op\":\"add\",\"path\":\"/webhooks/1/clientConfig/caBundle\",\"value\":\"$ca\"}]"
echo "webhook certificate installed (valid $DAYS days); CA set on $MWC"
