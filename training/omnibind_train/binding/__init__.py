"""Space binding with routers (OmniBind, seeds 001/003)."""
