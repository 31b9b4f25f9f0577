"""Money quanta: every dollar figure in burst is a Decimal rounded to one of these."""

from __future__ import annotations

from decimal import Decimal

# Plans, bounds and EC2's MaxTotalPrice: hourly prices are listed to the hundredth of a cent.
HUNDREDTH_CENT = Decimal("0.0001")
# Real cost: a per-second bill of a few cents an hour would vanish at a coarser quantum.
MICRODOLLAR = Decimal("0.000001")
