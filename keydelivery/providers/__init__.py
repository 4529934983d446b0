"""SMS providers behind one small blocking interface (see base.SmsProvider)."""
