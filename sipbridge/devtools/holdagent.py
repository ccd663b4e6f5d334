"""Hold on request in tests and the bench: a SIPp agent that holds the bridge (re-INVITE
``a=sendonly`` / ``a=inactive``, a control INFO, or nothing for the REST variant) and the
carrier audio that wakes it (hold music, a pause, then a person).

:func:`agent_scenario` renders ``uas_agent_hold.xml.in``; :func:`music_then_person` writes
the carrier's G.711 WAV; :func:`locate` finds a reference clip in received audio
(normalised cross-correlation), to check that the person's first words reached the agent.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from sipbridge.corpus import synth as gc
from sipbridge.corpus.hold import synth_music
from sipbridge.devtools.sipp import render_scenario, ulaw_wav
from sipbridge.media.frames import SAMPLE_RATE, scale_to_dbfs

HoldHow = Literal["sendonly", "inactive", "info", "api"]

_IN_DIALOG = """      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: <sip:agent@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
      To: [$caller]
      [last_Call-ID:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70"""

# SIPp refuses a variable that is set but never used: only scenarios that send requests
_REMEMBER = """    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="caller"/>
    </action>"""

_SDP = """      v=0
      o=sipp 53655765 {version} IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a={direction}"""


def _reinvite(direction: str, after_ms: int) -> str:
    return f"""  <pause milliseconds="{after_ms}"/>
  <send retrans="500">
    <![CDATA[

      INVITE [next_url] SIP/2.0
{_IN_DIALOG}
      CSeq: 1 INVITE
      Content-Type: application/sdp
      Content-Length: [len]

{_SDP.format(version=2353687638, direction=direction)}

    ]]>
  </send>
  <recv response="100" optional="true">
  </recv>
  <recv response="200" crlf="true">
  </recv>
  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
{_IN_DIALOG}
      CSeq: 1 ACK
      Content-Length: 0

    ]]>
  </send>"""


def _info(after_ms: int, body: str) -> str:
    return f"""  <pause milliseconds="{after_ms}"/>
  <send retrans="500">
    <![CDATA[

      INFO [next_url] SIP/2.0
{_IN_DIALOG}
      CSeq: 1 INFO
      Content-Type: application/vnd.sipbridge.control+json
      Content-Length: [len]

      {body}

    ]]>
  </send>
  <recv response="200">
  </recv>"""


_RESUME = f"""  <recv request="INVITE" crlf="true">
  </recv>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

{_SDP.format(version=2353687639, direction="sendrecv")}

    ]]>
  </send>
  <recv request="ACK" crlf="true">
  </recv>"""


def agent_scenario(out: Path, how: HoldHow, resume: bool, hold_after_ms: int = 300) -> Path:
    """Render the agent's scenario to ``out``: hold ``how`` once ``hold_after_ms`` after
    its answer; with ``resume``, expect (and answer) the bridge's re-INVITE."""
    if how in ("sendonly", "inactive"):
        hold = _reinvite(how, hold_after_ms)
    elif how == "info":
        hold = _info(hold_after_ms, '{"action":"hold"}')
    else:
        hold = ""
    return render_scenario(
        "uas_agent_hold.xml.in",
        out,
        REMEMBER=_REMEMBER if hold else "",
        HOLD=hold,
        RESUME=_RESUME if resume else "",
    )


@dataclass(frozen=True)
class HoldAudio:
    wav: Path  # G.711 u-law WAV for SIPp's rtp_stream
    onset_ms: int  # the person's first word, from the file's start
    person: npt.NDArray[np.float64]  # the person's speech as sent (after G.711), 8 kHz
    duration_ms: int


def music_then_person(
    out_dir: Path,
    music_s: float = 5.0,
    gap_s: float = 0.8,
    text: str = "Hello, this is Sarah in billing. How can I help you today?",
    seed: int = 7,
    person: bool = True,
    voice: str = "en-us",
) -> HoldAudio:
    """Hold music for ``music_s``, ``gap_s`` of line noise, then a person (espeak-ng)
    followed by 2 s of line noise; or music only for ``music_s`` (``person=False``)."""
    rng = np.random.default_rng(seed)
    r = random.Random(seed)
    music = synth_music(rng, music_s, 96.0, 196.0, "pad", level_dbfs=-20.0)
    parts = [music, gc.sil(gap_s * 1000)]
    onset = music.size + int(gap_s * SAMPLE_RATE)
    speech = np.zeros(0)
    if person:
        with tempfile.TemporaryDirectory() as td:
            sp = gc.Speech(Path(td))
            sp.render_many([(text, voice, 165, 50)])
            speech = scale_to_dbfs(sp.get(text, voice, 165, 50), -18.0)
        parts += [speech, gc.sil(2000)]
    x = np.concatenate(parts)
    x = x + gc.noise(x.size, "pink", rng) * 10 ** ((-62 - 3) / 20)
    x = gc.codec(x, "ulaw")
    out_dir.mkdir(parents=True, exist_ok=True)
    pcm = out_dir / f"hold-{seed}-{r.randrange(1 << 30)}.wav"
    gc.write_wav(pcm, x)
    wav = ulaw_wav(pcm, pcm.with_name(pcm.stem + "-ulaw.wav"))
    sent = x[onset : onset + speech.size] if person else np.zeros(0)
    return HoldAudio(wav, gc.ms_of(onset) if person else -1, sent, gc.ms_of(x.size))


def locate(received: npt.NDArray[np.float64], ref: npt.NDArray[np.float64]) -> tuple[int, float]:
    """(sample index, normalised correlation 0..1) of the best match of ``ref`` in
    ``received``; (-1, 0.0) when ``received`` is shorter than ``ref``."""
    n = ref.size
    if n == 0 or received.size < n:
        return -1, 0.0
    size = 1 << int(np.ceil(np.log2(received.size + n)))
    num = np.fft.irfft(np.fft.rfft(received, size) * np.conj(np.fft.rfft(ref, size)), size)
    num = num[: received.size - n + 1]
    c2 = np.concatenate(([0.0], np.cumsum(received * received)))
    energy = np.sqrt(np.maximum(c2[n:] - c2[:-n], 1e-12)) * float(np.sqrt(np.sum(ref * ref)))
    score = num / energy
    i = int(np.argmax(score))
    return i, float(score[i])


__all__ = ["HoldAudio", "agent_scenario", "locate", "music_then_person"]
