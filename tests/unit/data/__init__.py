"""Tests of secure_fcit.data."""
