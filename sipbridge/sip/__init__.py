"""The SIP engine: a pool of worker processes, each with one pjsua2 Endpoint.

pjsua2 is imported only in this package, and only in the worker process (the pool's
fork server imports the modules but never initialises pjsua2). Where a leg lives and what
each file may touch:

- supervisor side (asyncio, no pjsua2): ``pool`` (the :class:`WorkerPool`, placement and
  commands), ``scaling`` (elastic pool), ``workerproc`` (one worker process's handle),
  ``forkserver`` (starting worker processes);
- worker process: ``worker`` (the loop, commands, the leg table, dialling, hangups,
  timers) and the parts it owns: ``endpoint`` (Endpoint start-up, transports, TLS
  profiles), ``accounts``, ``mixer`` (bridges, players, taps, port cooling),
  ``detection``, ``dtmf``, ``inbound`` (SIP-triggered mode), ``mediawatch`` (media
  timeout), ``guardlink`` (packet guard and listen gate glue), ``waker``, ``agenthold``
  (hold on request: listener, delay line, resume re-INVITE); ``pjbind`` holds
  the pjsua2 subclasses whose callbacks feed the worker, ``tap`` the audio tap port,
  ``guard``/``listengate`` the packet guard (ctypes, no pjsua2 import);
- pure (no pjsua2, unit-tested alone): ``leg`` (a leg's state, one owner per sub-state),
  ``endcause`` (why a leg ended), ``sdp``, ``agentleg`` (DTMF strings, source filter);
  SIP message readers live in :mod:`sipbridge.sipmsg`.
"""
