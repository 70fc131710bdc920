"""foundry's tests, laid out like the package (tests/data/ for foundry/data/, and so on); see tests/conftest.py."""
