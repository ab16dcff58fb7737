"""Body-weight SUV of a PET DICOM series, from its headers, after the QIBA vendor-neutral SUV pseudocode.

That is the rule Slicer's PET-DICOM extension (SUVFactorCalculator) implements:

- Units (0054,1001) must be BQML, and CorrectedImage (0028,0051) must hold ATTN and DECY;
- DecayCorrection (0054,1102) START: the images are decay-corrected to the scan start, so the injected dose is
  decayed from the injection (RadiopharmaceuticalStartDateTime, or SeriesDate with RadiopharmaceuticalStartTime)
  to the scan start, which is SeriesDate/SeriesTime unless that is after the earliest AcquisitionDate/Time of
  the series (a post-processed series whose series time is its creation time): then the earliest acquisition;
- DecayCorrection ADMIN: the images are decay-corrected to the injection, so the dose is not decayed;
- SUVbw = value x weight (g) / decayed dose (Bq): the factor is PatientWeight (kg) x 1000 / decayed dose.

Works on headers already read (pydicom datasets, ``dicom.py``); reads no file. A missing, malformed or
inconsistent tag raises InputError naming its keyword and (gggg,eeee).
"""

from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

from ..errors import InputError

log = logging.getLogger(__name__)

# The sequence that holds the radiopharmaceutical's dose, half-life and injection time.
RADIOPHARMACEUTICAL = "RadiopharmaceuticalInformationSequence"


@dataclass(frozen=True)
class SUVFactor:
    """The factor that turns a series' Bq/ml into SUV, and what it was computed from, for run.json.

    Attributes:
        type: the SUV normalisation (``settings.SUV_TYPES``).
        factor: SUV per Bq/ml.
        tags: keyword -> the value of every DICOM attribute used.
        scan_start: the time the dose was decayed to (ISO 8601), or None when not decayed (ADMIN).
        injection: the injection time (ISO 8601), or None when not needed (ADMIN).
        decay_s: seconds from the injection to the scan start (0 for ADMIN).
        decayed_dose_bq: the injected dose at the scan start.
    """

    type: str
    factor: float
    tags: Dict[str, Any] = field(default_factory=dict)
    scan_start: Optional[str] = None
    injection: Optional[str] = None
    decay_s: float = 0.0
    decayed_dose_bq: float = 0.0

    def record(self) -> dict:
        """run.json's ``suv`` entry."""
        return {"type": self.type, "factor": self.factor, "tags": dict(self.tags), "scan_start": self.scan_start,
                "injection": self.injection, "decay_s": self.decay_s, "decayed_dose_bq": self.decayed_dose_bq}


def tag_name(keyword: str, within: Optional[str] = None) -> str:
    """``keyword (gggg,eeee)``, and the sequence that holds it, for messages."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    name = f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else keyword
    return f"{name} in {tag_name(within)}" if within else name


def suv_bw_factor(headers: Sequence[Any]) -> SUVFactor:
    """The body-weight SUV factor of one PET series (QIBA).

    Args:
        headers: the pydicom datasets of every file of the series (pixel data not needed).

    Returns:
        The factor and the tags it came from.

    Raises:
        InputError: a tag is missing, malformed, differs between the files, or its value rules SUV out
            (not BQML, not attenuation- and decay-corrected, an injection after the scan, ...).
    """
    if not headers:
        raise InputError("the PET series holds no DICOM files")
    tags: Dict[str, Any] = {}
    units = _text(headers, "Units", tags)
    if units != "BQML":
        advice = " (the series is already in SUV: leave suv unset; petstab: leave out --suv)" if units == "GML" else ""
        raise InputError(f"{tag_name('Units')} is {units!r}: SUV needs BQML, an activity concentration{advice}")
    corrections = _series_value(headers, "CorrectedImage")
    corrected = [str(value).strip() for value in (corrections if _is_multi(corrections) else [corrections])]
    tags["CorrectedImage"] = corrected
    missing = [needed for needed in ("ATTN", "DECY") if needed not in corrected]
    if missing:
        shown = "\\".join(corrected)
        raise InputError(f"{tag_name('CorrectedImage')} is {shown!r}, without {' and '.join(missing)}: "
                         "SUV needs an image corrected for attenuation and decay")
    decay_correction = _text(headers, "DecayCorrection", tags)
    weight_kg = _positive(headers, "PatientWeight", tags)
    dose_bq = _positive(headers, "RadionuclideTotalDose", tags, within=RADIOPHARMACEUTICAL)
    half_life_s = _positive(headers, "RadionuclideHalfLife", tags, within=RADIOPHARMACEUTICAL)

    if decay_correction == "ADMIN":
        # Already decay-corrected to the injection: the dose is the injected dose.
        return SUVFactor("bw", weight_kg * 1000.0 / dose_bq, tags, decayed_dose_bq=dose_bq)
    if decay_correction != "START":
        raise InputError(f"{tag_name('DecayCorrection')} is {decay_correction!r}: SUV needs START or ADMIN "
                         "(an image decay-corrected to the scan start or to the injection)")
    scan_start, scan_source = _scan_start(headers, tags)
    injection, injection_source = _injection(headers, tags, _parse_date(tags["SeriesDate"], tag_name("SeriesDate")))
    decay_s = (scan_start - injection).total_seconds()
    if decay_s < 0:
        raise InputError(f"the injection ({injection.isoformat()}, from {injection_source}) is after the scan start "
                         f"({scan_start.isoformat()}, from {scan_source}): check the times; an injection the day "
                         f"before needs {tag_name('RadiopharmaceuticalStartDateTime', RADIOPHARMACEUTICAL)}")
    decayed_dose_bq = dose_bq * 2.0 ** (-decay_s / half_life_s)
    return SUVFactor("bw", weight_kg * 1000.0 / decayed_dose_bq, tags, scan_start=scan_start.isoformat(),
                     injection=injection.isoformat(), decay_s=decay_s, decayed_dose_bq=decayed_dose_bq)


def _is_multi(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _raw(header: Any, keyword: str, within: Optional[str] = None) -> Any:
    """The value of ``keyword`` in one file (in the first item of ``within``), or None when absent or empty."""
    if within:
        sequence = header.get(within)
        if not sequence:
            return None
        header = sequence[0]
    value = header.get(keyword)
    return None if value is None or value == "" or (_is_multi(value) and len(value) == 0) else value


def _series_value(headers: Sequence[Any], keyword: str, within: Optional[str] = None, required: bool = True) -> Any:
    """The value of ``keyword``, which every file of the series must give alike."""
    values = [_raw(header, keyword, within) for header in headers]
    first = values[0]
    if first is None:
        if not required:
            return None
        raise InputError(f"{tag_name(keyword, within)} is missing from {_file(headers[0])}, and SUV needs it")
    for header, value in zip(headers[1:], values[1:]):
        if _plain(value) != _plain(first):
            raise InputError(f"{tag_name(keyword, within)} differs between the files of the series: "
                             f"{_plain(first)!r} in {_file(headers[0])}, {_plain(value)!r} in {_file(header)}")
    return first


def _plain(value: Any) -> Any:
    """A value as comparable, JSON-ready text: lists of strings for multi-valued attributes."""
    if value is None:
        return None
    return [str(v).strip() for v in value] if _is_multi(value) else str(value).strip()


def _file(header: Any) -> str:
    return str(getattr(header, "filename", None) or "one file")


def _text(headers: Sequence[Any], keyword: str, tags: Dict[str, Any]) -> str:
    value = str(_series_value(headers, keyword)).strip().upper()
    tags[keyword] = value
    return value


def _positive(headers: Sequence[Any], keyword: str, tags: Dict[str, Any], within: Optional[str] = None) -> float:
    value = _series_value(headers, keyword, within)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{tag_name(keyword, within)} is {_plain(value)!r}, not a number") from None
    if not number > 0 or number == float("inf"):
        raise InputError(f"{tag_name(keyword, within)} is {_plain(value)!r}: SUV needs a positive value")
    tags[keyword] = number
    return number


def _scan_start(headers: Sequence[Any], tags: Dict[str, Any]) -> Tuple[datetime.datetime, str]:
    """SeriesDate/SeriesTime, or the earliest AcquisitionDate/Time when the series time is after it (QIBA);
    and the tags it came from, for messages."""
    date, time = _series_value(headers, "SeriesDate"), _series_value(headers, "SeriesTime")
    tags.update(SeriesDate=_plain(date), SeriesTime=_plain(time))
    series = datetime.datetime.combine(_parse_date(date, tag_name("SeriesDate")),
                                       _parse_time(time, tag_name("SeriesTime")))
    acquisitions = []
    for header in headers:
        date, time = _raw(header, "AcquisitionDate"), _raw(header, "AcquisitionTime")
        if date is not None and time is not None:
            acquisitions.append((datetime.datetime.combine(_parse_date(date, tag_name("AcquisitionDate")),
                                                           _parse_time(time, tag_name("AcquisitionTime"))), date, time))
    if not acquisitions or series <= min(acquisitions, key=lambda acquisition: acquisition[0])[0]:
        return series, f"{tag_name('SeriesDate')} and {tag_name('SeriesTime')}"
    earliest, date, time = min(acquisitions, key=lambda acquisition: acquisition[0])
    log.warning("The series time %s is after the earliest acquisition time %s (a post-processed series?): "
                "decaying the dose to the earliest acquisition, as QIBA does", series.isoformat(), earliest.isoformat())
    tags.update(AcquisitionDate=_plain(date), AcquisitionTime=_plain(time))
    return earliest, f"the earliest {tag_name('AcquisitionDate')} and {tag_name('AcquisitionTime')}"


def _injection(headers: Sequence[Any], tags: Dict[str, Any],
               series_date: datetime.date) -> Tuple[datetime.datetime, str]:
    """RadiopharmaceuticalStartDateTime, or RadiopharmaceuticalStartTime on the day of the series (QIBA);
    and the tags it came from, for messages."""
    keyword = "RadiopharmaceuticalStartDateTime"
    value = _series_value(headers, keyword, RADIOPHARMACEUTICAL, required=False)
    if value is not None:
        tags[keyword] = _plain(value)
        return _parse_date_time(value, tag_name(keyword, RADIOPHARMACEUTICAL)), tag_name(keyword)
    keyword = "RadiopharmaceuticalStartTime"
    value = _series_value(headers, keyword, RADIOPHARMACEUTICAL, required=False)
    if value is None:
        raise InputError(f"{tag_name(keyword, RADIOPHARMACEUTICAL)} is missing from {_file(headers[0])}, and so is "
                         f"{tag_name('RadiopharmaceuticalStartDateTime')}: SUV needs the injection time")
    tags[keyword] = _plain(value)
    injection = datetime.datetime.combine(series_date, _parse_time(value, tag_name(keyword, RADIOPHARMACEUTICAL)))
    return injection, f"{tag_name(keyword)} on the {tag_name('SeriesDate')}"


# DICOM DA, TM and DT; the old ACR-NEMA forms (1999.12.31, 23:59:59) too. A DT's UTC offset is dropped: the
# series times carry none, and both are the scanner's local time.
_DATE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_TIME = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d+)?)?)?$")
_DATE_TIME = re.compile(r"^(\d{8})(\d{2}(?:\d{2}(?:\d{2}(?:\.\d+)?)?)?)?(?:[+-]\d{4})?$")


def _parse_date(value: Any, name: str) -> datetime.date:
    """A DA value of the tag ``name`` (for the message)."""
    match = _DATE.match(str(value).strip())
    try:
        if match:
            return datetime.date(*(int(part) for part in match.groups()))
    except ValueError:
        pass
    raise InputError(f"{name} is {_plain(value)!r}, not a DICOM date (YYYYMMDD)")


def _parse_time(value: Any, name: str) -> datetime.time:
    """A TM value of the tag ``name`` (for the message)."""
    match = _TIME.match(str(value).strip())
    try:
        if match:
            hours, minutes, seconds, fraction = match.groups()
            microseconds = min(round(float(fraction) * 1e6), 999999) if fraction else 0
            return datetime.time(int(hours), int(minutes or 0), int(seconds or 0), microseconds)
    except ValueError:
        pass
    raise InputError(f"{name} is {_plain(value)!r}, not a DICOM time (HHMMSS.FFFFFF)")


def _parse_date_time(value: Any, name: str) -> datetime.datetime:
    """A DT value of the tag ``name`` (for the message)."""
    match = _DATE_TIME.match(str(value).strip())
    if match:
        date, time = match.groups()
        try:
            return datetime.datetime.combine(_parse_date(date, name), _parse_time(time or "00", name))
        except InputError:
            pass
    raise InputError(f"{name} is {_plain(value)!r}, not a DICOM date-time (YYYYMMDDHHMMSS.FFFFFF)")
