"""Hypothesis strategies: every message type of both interfaces, in every protocol version."""

from hypothesis import strategies as st

from bcast_sp4 import wire
from bcast_sp4.wire.message import ABSENT, ANY, ONE, OPTIONAL, SOME, VERSION_GROUPS
from bcast_sp4.wire.params import CP_CW_V1_LENGTH, CPCWCombination, Kind

ALL_CLASSES = sorted(wire.MESSAGE_CLASSES.values(), key=lambda c: c.MESSAGE_TYPE)


def value_strategy(ptype, group):
    kind = ptype.kind
    if ptype.values is not None:
        return st.sampled_from(sorted(ptype.values))
    if kind is Kind.U8:
        return st.integers(0, 0xFF)
    if kind is Kind.U16:
        return st.integers(0, 0xFFFF)
    if kind is Kind.U32:
        return st.integers(0, 0xFFFFFFFF)
    if kind is Kind.I16:
        return st.integers(-0x8000, 0x7FFF)
    if kind is Kind.BOOL:
        return st.booleans()
    if kind is Kind.BYTES:
        return st.binary(min_size=ptype.min_length, max_size=48)
    cw = st.binary(min_size=CP_CW_V1_LENGTH - 2, max_size=CP_CW_V1_LENGTH - 2) if group == 0 else st.binary(min_size=1, max_size=32)
    return st.builds(CPCWCombination, st.integers(0, 0xFFFF), cw)


def field_strategy(ptype, card, group):
    value = value_strategy(ptype, group)
    if card is ABSENT:
        return st.none()
    if card is ONE:
        return value
    if card is OPTIONAL:
        return st.none() | value
    return st.lists(value, min_size=1 if card is SOME else 0, max_size=4).map(tuple)


@st.composite
def messages(draw, classes=ALL_CLASSES):
    cls = draw(st.sampled_from(classes))
    version = draw(st.sampled_from(sorted(VERSION_GROUPS[cls.INTERFACE])))
    group = VERSION_GROUPS[cls.INTERFACE][version]
    fields = {p.name: draw(field_strategy(p, cards[group], group)) for p, cards in cls.PARAMS}
    return cls(protocol_version=version, **fields)


assert ANY  # re-exported names used by the property tests
