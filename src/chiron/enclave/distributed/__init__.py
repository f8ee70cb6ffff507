"""Distributed training: several training enclaves and one parameter-server enclave.

Rank 0 of a job is the parameter server; ranks 1..N are training enclaves, each training
the recipe on its own shard of the owner's data in its own sandbox. At the exchange
points of a schedule fixed before training, each training enclave asks its sandboxed
child for its parameters, sends them to the parameter server and loads the average it
gets back. The sandboxed child has no network, so the exchange runs here, in the
trusted enclave processes:

  `settings`     the job's arguments as the enclave checks them;
  `schedule`     the fixed exchange schedule, the data shards, the staleness gate;
  `messages`     AES-GCM messages under the group key, fixed size, checked on receipt;
  `averaging`    averaging safetensors parameter vectors without torch;
  `group`        torch.distributed (a TCPStore for rendezvous, gloo for transport);
  `membership`   mutual attestation and the sealed group key;
  `worker`       a training enclave's side (the `train` call with `distributed` args);
  `paramserver`  the parameter server's side (the `exchange` call).

torch is imported only by `group`, and only when a distributed job starts: the enclave
process stays torch-free for every other call. docs/distributed.md has the protocol.
"""
