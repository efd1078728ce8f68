"""What tests/ and bench/ share: a real provisiond process, a private libvirtd, the API fuzz."""
