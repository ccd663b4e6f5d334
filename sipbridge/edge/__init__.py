"""The SIP edge: Kamailio (TLS, topology hiding, flood guard, dispatcher) and rtpengine
(SRTP to carriers, plain RTP inside) in front of the bridge nodes, configured from the
bridge's own config. :mod:`.model` is the ``edge:`` section; :mod:`.generate` writes the
edge's files (``sipbridge edge-config``)."""
