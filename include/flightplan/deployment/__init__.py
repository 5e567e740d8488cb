"""Deployment: the gate between challenger and champion, promotion, rollback, and batch scoring with the
champion."""
