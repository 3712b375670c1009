"""The credentials hop: the key and business certificate that sign Maskinporten grants.

Loaded exactly as the relay loads them (`relay.auth.credentials.load_credentials`), which checks
in this order: the settings and the file (keystore password), the key against the certificate,
the certificate's dates. Its one-line error tells which step failed; the checks before it passed
and the ones after it are skipped. On success the certificate is looked at further: days to
expiry (a warning under 30), and the organisation number it carries.

The organisation number: Maskinporten refuses a certificate that does not belong to the client's
registered organisation (``invalid_client``; the stand-in in relay/dev/maskinporten.py plays that
rule) and reads it from the subject's serialNumber (SEID v1) or organizationIdentifier
``NTRNO-<orgnr>`` (SEID v2). A certificate without one is refused whatever the client: failed.
The registration itself is not visible from here; eFormidling clients are named
``MOVE_IP_<orgnr>`` after their organisation, so a different number there is a warning (the token
request then gives Maskinporten's own verdict).
"""

from __future__ import annotations

import base64
import datetime as dt
import re

from cryptography import x509
from cryptography.x509.oid import NameOID

from relay.auth.credentials import load_credentials
from relay.delivery.setup import credentials_configured
from relay.errors import UserError
from relay.ops.doctor.checks import split_advice
from relay.ops.doctor.context import Context

__all__ = ["HOP", "check_credentials"]

HOP = "credentials"
LOAD = "keystore"
MATCH = "key matches certificate"
VALIDITY = "certificate validity"
ORGNR = "organisation number"
_STEPS = (LOAD, MATCH, VALIDITY, ORGNR)
WARN_DAYS = 30

_ORGANIZATION_IDENTIFIER = x509.ObjectIdentifier("2.5.4.97")
_CLIENT_ORGNR = re.compile(r"MOVE_IP_(\d{9})")
_NINE_DIGITS = re.compile(r"(\d{9})$")

_PASSED = {
    LOAD: "the keystore (or key and certificate files) loaded",
    MATCH: "the private key belongs to the certificate",
}
_ADVICE = {
    LOAD: "fix the setting or file named",
    MATCH: "use the key the certificate was issued for (export key and certificate together)",
    VALIDITY: "renew the business certificate (or check this machine's clock)",
}


def check_credentials(ctx: Context) -> None:
    mp = ctx.cfg.maskinporten
    report = ctx.report
    if not credentials_configured(mp):
        report.fail(
            HOP,
            LOAD,
            "no Maskinporten credentials are configured: delivery is off",
            "set maskinporten.client_id and maskinporten.keystore (or key_file with cert_file "
            "or kid)",
        )
        for step in _STEPS[1:]:
            report.skip(HOP, step, f"{HOP}/{LOAD}")
        return
    now = dt.datetime.now(dt.UTC)
    try:
        creds = load_credentials(mp, ctx.environ, now)
    except UserError as exc:
        failed = _step_of(str(exc))
        for step in _STEPS:
            index, at = _STEPS.index(step), _STEPS.index(failed)
            if index < at:
                report.ok(HOP, step, _PASSED[step])
            elif index == at:
                message, advice = split_advice(str(exc), _ADVICE[failed])
                if "wrong password" in message:
                    advice = (
                        "give the keystore's password in the variable or file named "
                        "(maskinporten.keystore_password_env or keystore_password_file)"
                    )
                report.fail(HOP, step, message, advice)
            else:
                report.skip(HOP, step, f"{HOP}/{failed}")
        return
    ctx.creds = creds
    source = f"keystore {mp.keystore}" if mp.keystore else f"key_file {mp.key_file}"
    if creds.x5c is None:
        report.ok(HOP, LOAD, f"{source} loaded; grants are signed with key id {creds.kid}")
        report.ok(HOP, MATCH, "not applicable: the key is registered with the client (kid)")
        report.ok(HOP, VALIDITY, "not applicable: no certificate is sent (kid)")
        report.ok(HOP, ORGNR, "not applicable: Maskinporten knows the key's client (kid)")
        return
    report.ok(HOP, LOAD, f"{source} loaded: certificate {creds.subject}")
    report.ok(HOP, MATCH, "the private key belongs to the certificate")
    assert creds.not_after is not None
    days = (creds.not_after - now).total_seconds() / 86400
    until = creds.not_after.strftime("%Y-%m-%d %H:%M UTC")
    if days < WARN_DAYS:
        report.warn(
            HOP,
            VALIDITY,
            f"the certificate expires in {days:.0f} day(s), {until}",
            "order and install the renewed business certificate now",
        )
    else:
        report.ok(HOP, VALIDITY, f"valid until {until} ({days:.0f} days)")
    leaf = x509.load_der_x509_certificate(base64.b64decode(creds.x5c[0]))
    _orgnr(ctx, leaf)


def _orgnr(ctx: Context, leaf: x509.Certificate) -> None:
    report = ctx.report
    found = sorted(certificate_orgnrs(leaf))
    if not found:
        report.fail(
            HOP,
            ORGNR,
            "the certificate carries no organisation number (serialNumber or "
            "organizationIdentifier): Maskinporten cannot tie it to an organisation",
            "use the organisation's business certificate (virksomhetssertifikat)",
        )
        return
    client_id = ctx.cfg.maskinporten.client_id
    named = _CLIENT_ORGNR.fullmatch(client_id)
    shown = ", ".join(found)
    if named is None:
        report.ok(
            HOP,
            ORGNR,
            f"certificate for organisation {shown}; client id {client_id} names no "
            "organisation (Maskinporten checks the client's registration)",
        )
    elif named[1] in found:
        report.ok(HOP, ORGNR, f"certificate for organisation {shown}, as client id {client_id}")
    else:
        report.warn(
            HOP,
            ORGNR,
            f"the certificate is for organisation {shown} but client id {client_id} names "
            f"{named[1]}; Maskinporten refuses a certificate of another organisation than the "
            "client's",
            "use the business certificate of the client's organisation, or the client id "
            "registered for the certificate's organisation",
        )


def certificate_orgnrs(cert: x509.Certificate) -> set[str]:
    """The organisation numbers a business certificate carries (SEID v1 and v2 forms)."""
    values = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)]
    values += [str(a.value) for a in cert.subject.get_attributes_for_oid(_ORGANIZATION_IDENTIFIER)]
    return {m[1] for v in values if (m := _NINE_DIGITS.search(v.strip()))}


def _step_of(message: str) -> str:
    """Which check a load_credentials error is about (its messages are ours, see there)."""
    if "does not match the certificate" in message:
        return MATCH
    if " expired " in message or "is not valid until" in message:
        return VALIDITY
    return LOAD
