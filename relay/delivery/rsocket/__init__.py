"""The RSocket sink: one supervised connection (`connection`, `transport`), its requests
(`sink`) and what the upstream's errors mean for the events (`errors`)."""
