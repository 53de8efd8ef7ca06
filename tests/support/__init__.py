"""What the tests stand on: servers started for the session, fakes, the Twilio-like driver."""
