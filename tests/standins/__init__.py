"""API stand-ins for Firecracker and Cloud Hypervisor (issue 18).

The executables `firecracker` and `cloud-hypervisor` in this folder serve each VMM's REST API on
its unix socket, validate every request against tables transcribed from the official OpenAPI
specs (`firecracker_spec.py`, `cloud_hypervisor_spec.py`, checked by `schema.py`), keep each
VMM's state machine (`firecracker_api.py`, `cloud_hypervisor_api.py`), and run the VM through a
`Runner` (`runner.py`): the fake one records calls, the QEMU one (`qemu_runner.py`, added later)
boots the guest. Standard library only.
"""
