"""fcit package."""
