import streamlit as st

st.title("Explain")
st.info("This page is being built.")
