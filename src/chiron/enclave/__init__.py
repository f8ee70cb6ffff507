"""The trusted enclave runtime (the measured code).

The host may reach it only through `chiron.enclave.boundary`; every other module in
this package is internal to the enclave.
"""
