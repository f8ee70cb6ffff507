"""Every domain-separation label Chiron binds into HPKE seals and signatures.

One list, so no two uses can collide and a reviewer can see at a glance what each
sealed blob or signature may ever be accepted as.
"""

# HPKE: the training enclave's per-job metrics, sealed to the owner.
OWNER_REPORT = "owner-report"
# Signature: a training enclave's receipt for one job.
TRAINING_RECEIPT = "training-receipt"
# HPKE: a party's model-key share as escrowed in the model file, sealed to that party.
MODEL_SHARE_ESCROW = "model-share-escrow"
# HPKE: a party's model-key share re-sealed by its client to an attested query enclave.
MODEL_SHARE_PROVISION = "model-share"
# HPKE: the secret of one query channel, sealed by the owner's client to an attested
# query enclave; queries and answers then travel under keys derived from it
# (core.query_channel.ChannelKeys).
QUERY_CHANNEL_SECRET = "query-channel-secret"  # noqa: S105 (a label, not a secret)
# Signature: the owner opening one query channel / authorising one evaluation.
QUERY_CHANNEL_OPENING = "query-channel-opening"
EVALUATION_REQUEST = "evaluation-request"
# HPKE: an evaluation report, sealed to the owner's reply key.
EVALUATION_REPORT = "evaluation-report"
# Signature: the simulated platform's root key certifying a platform key.
SIM_PLATFORM_CERTIFICATE = "sim-platform-certificate"
# Signature: a certified simulated-platform key signing attestation evidence.
SIM_EVIDENCE = "sim-evidence"
# HPKE: a distributed job's group key, sealed by the parameter-server enclave to one
# attested training enclave.
EXCHANGE_GROUP_KEY = "exchange-group-key"
# Signature: the parameter-server enclave vouching for the group key it sealed.
EXCHANGE_GROUP_KEY_GRANT = "exchange-group-key-grant"
# Signature: the owner authorising exactly one training job (core.manifest).
JOB_MANIFEST = "job-manifest"
# Signature: the provider vouching for one recipe under its identity (core.recipe_statement).
RECIPE_STATEMENT = "recipe-statement"
# HPKE: the owner's dataset key sealed to an attested training enclave for one manifest.
TRAINING_DATA_KEY = "training-data-key"
# HPKE: the owner's dataset key sealed to an attested query enclave for one evaluation.
EVALUATION_DATA_KEY = "evaluation-data-key"
# Signature: an enclave vouching for what it returns (reports), by its attested key.
EVALUATION_REPORT_SIGNATURE = "evaluation-report-signature"
OWNER_REPORT_SIGNATURE = "owner-report-signature"
# HPKE: the secret the owner's client derives for one job, sealed to the attested training
# enclave beside the data key; the enclave seals the job's checkpoints under it.
JOB_SECRET = "job-secret"  # noqa: S105 (a label, not a secret)
# Signature: the owner asking a provider's key-release agent for the provider's share
# for one attested query enclave (core.key_release).
KEY_RELEASE_REQUEST = "key-release-request"
