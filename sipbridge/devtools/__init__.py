"""Development harness: real processes on loopback for the integration tests, the load
bench (``bench/load.py``) and the demo (``scripts/demo.py``). Not used by the bridge itself.

- :mod:`~sipbridge.devtools.bridge`: a ``sipbridge run`` subprocess against a config and a
  client for its API (:class:`~sipbridge.devtools.bridge.Bridge`), a test config
  (:func:`~sipbridge.devtools.bridge.bridge_config`), and
  :class:`~sipbridge.devtools.bridge.Stack`, which stops what a run started.
- :mod:`~sipbridge.devtools.sipp`: SIPp scenarios (``scenarios/``) as UAS/UAC processes on
  free loopback ports, with their message logs parsed into SIP messages.
- :mod:`~sipbridge.devtools.ports`: free loopback ports.

Works from a source checkout (``scripts/install`` installs the package editable): the SIPp
scenarios are data files next to this module, not part of a built wheel.
"""
