// qstrs specific to stubdm's port (most are found by scanning the sources).
// *FORMAT-OFF*
Q(stubdm.main)
